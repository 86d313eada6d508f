-- Evaluation (sendflowr.identity.evaluate): every pair of raw identifiers carried by one event, keyed by
-- halfMD5(type || '\0' || raw) (graph.raw_hashes computes the same in Python), distinct, a <= b. The pair
-- (h, h) says that raw identifier was seen at all. Raw values, not nodes: identifiers that normalization
-- rejects count too (what the evidence offers, whatever stitching made of it).
SELECT DISTINCT pair.1 AS a, pair.2 AS b
FROM (
    SELECT arraySort(arrayFilter(h -> h != 0, arrayMap((t, v) -> if(v != '', halfMD5(concat(t, char(0), v)), 0),
                                                       [${identifier_types}], [${identifier_columns}]))) AS hs
    FROM ${database}.events
)
ARRAY JOIN arrayFilter(p -> p.1 <= p.2, arrayFlatten(arrayMap(x -> arrayMap(y -> (x, y), hs), hs))) AS pair
