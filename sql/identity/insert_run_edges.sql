-- Every pair of distinct valid identifiers of one new event, src < dst, aggregated per pair.
INSERT INTO ${database}.identity_run_edges (src, dst, first_seen, last_seen, events)
SELECT pair.1 AS src, pair.2 AS dst, min(occurred_at), max(occurred_at), count()
FROM (
    SELECT any(occurred_at) AS occurred_at, arraySort(groupUniqArray(node_key)) AS keys
    FROM ${database}.identity_run_nodes
    GROUP BY kafka_topic, kafka_partition, kafka_offset
    HAVING length(keys) > 1
)
ARRAY JOIN arrayFilter(p -> p.1 < p.2, arrayFlatten(arrayMap(a -> arrayMap(b -> (a, b), keys), keys))) AS pair
GROUP BY src, dst
