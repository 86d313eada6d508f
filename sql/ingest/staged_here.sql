-- Guard, spliced into every statement of a load that reads the attempt's scratch (Memory tables live on one server):
-- the server running the statement must hold exactly the rows the writer staged (and the known ids it recorded).
-- A scalar subquery runs while the statement is planned, so an empty staging throws too. Behind a load balancer
-- that sends a writer's statements to different replicas, the load then fails loudly instead of reading an empty
-- staging and committing its ranges (docs/DEPLOYMENT.md, "ClickHouse behind a load balancer").
(SELECT throwIf(count() != {staged:UInt64}, 'ingest_staging on this ClickHouse server does not hold the attempt''s staged rows: the writer''s statements reached different servers (SENDFLOWR_CLICKHOUSE_URL must reach one server for the Dagster runs, docs/DEPLOYMENT.md)')
 FROM ${database}.ingest_staging WHERE attempt_id = {attempt:String}) = 0
AND (SELECT throwIf(count() != {known:UInt64}, 'ingest_known_ids on this ClickHouse server does not hold the attempt''s known ids: the writer''s statements reached different servers (SENDFLOWR_CLICKHOUSE_URL must reach one server for the Dagster runs, docs/DEPLOYMENT.md)')
 FROM ${database}.ingest_known_ids WHERE attempt_id = {attempt:String}) = 0
