-- Every pair of distinct valid identifiers of one new event, src < dst, aggregated per pair.
INSERT INTO ${database}.identity_edges (src, dst, first_seen, last_seen, events)
SELECT pair.1 AS src, pair.2 AS dst, min(occurred_at), max(occurred_at), count()
FROM (
    SELECT any(n.occurred_at) AS occurred_at, arraySort(groupUniqArray(i.node_key)) AS keys
    FROM (${new_identifiers}) AS n
    INNER JOIN (SELECT toString(identifier_type) AS identifier_type, raw_value, node_key
                    FROM ${database}.identity_identifiers FINAL WHERE reason = '') AS i
        ON n.identifier_type = i.identifier_type AND n.raw_value = i.raw_value
    GROUP BY n.kafka_topic, n.kafka_partition, n.kafka_offset
    HAVING length(keys) > 1
)
ARRAY JOIN arrayFilter(p -> p.1 < p.2, arrayFlatten(arrayMap(a -> arrayMap(b -> (a, b), keys), keys))) AS pair
GROUP BY src, dst
