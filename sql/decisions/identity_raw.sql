-- Every raw identifier stitching has seen -> its node key (0 = rejected by normalization), keyed by
-- halfMD5(type || '\0' || raw): the first 8 bytes of MD5, big-endian, which Python recomputes with hashlib,
-- so a request's identifier is looked up without normalizing it again. One row per distinct raw value.
SELECT
    halfMD5(concat(toString(identifier_type), char(0), raw_value)) AS raw_hash,
    any(node_key) AS node_key
FROM ${database}.identity_identifiers
GROUP BY raw_hash
ORDER BY raw_hash
