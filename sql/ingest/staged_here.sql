-- Guard, spliced into every statement of a load that reads the attempt's scratch (Memory tables live on one server):
-- the server running the statement must hold exactly the rows the writer put into the scratch table. One such
-- condition per scratch table of the sink (sendflowr/ingest/sink.py fills in the table, the query parameter holding
-- its row count and what it holds). A scalar subquery runs while the statement is planned, so an empty staging
-- throws too. Behind a load balancer that sends a writer's statements to different replicas, the load then fails
-- loudly instead of reading an empty staging and committing its ranges (docs/DEPLOYMENT.md, "ClickHouse behind a
-- load balancer").
(SELECT throwIf(count() != {${count}:UInt64}, '${table} on this ClickHouse server does not hold the attempt''s ${what}: the writer''s statements reached different servers (SENDFLOWR_CLICKHOUSE_URL must reach one server for the Dagster runs, docs/DEPLOYMENT.md)')
 FROM ${database}.${table} WHERE attempt_id = {attempt:String}) = 0
