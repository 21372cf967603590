-- Finer statistics for product names, so that the planner can tell a common search
-- term from a rare one: PostgreSQL estimates how many names `name ILIKE '%term%'`
-- matches by trying the pattern on the name histogram, and with the default 100
-- entries a term found in 5% of a million names was estimated at 100 rows. It then
-- fetched all 50,000 matches by trigram and sorted them (100 ms) instead of walking
-- the sort index until a page of matches was found (2 ms).
ALTER TABLE products ALTER COLUMN name SET STATISTICS 1000;
