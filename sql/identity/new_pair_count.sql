-- How many of the run's pairs are new to identity_edges (read before they are added; primary-key lookups).
SELECT count() FROM ${database}.identity_run_edges
WHERE (src, dst) NOT IN (SELECT src, dst FROM ${database}.identity_edges
                         WHERE src IN (SELECT src FROM ${database}.identity_run_edges))
