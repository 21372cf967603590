-- Stored functions moved out of the numbered migrations into sql/functions/, one
-- definition each (db/migrations.py replaces them whenever the files change). The
-- migrations that held them now hold only their tables, indexes and types: their
-- recorded checksums are brought up to date here, once, so that databases migrated
-- before the move do not report them as edited.
UPDATE schema_migrations m SET checksum = v.checksum
  FROM (VALUES
      ('006_create_order', '6b121c4ed49cae2f5d36069bc937a48c78eed410810d72aa4784a1dc657ba2a9'),
      ('008_create_order_by_key', '6b121c4ed49cae2f5d36069bc937a48c78eed410810d72aa4784a1dc657ba2a9'),
      ('013_abuse_limits', '92f8253870630856527782fe6482154807a0ae202937a2d5186a7bab0c3ec853'),
      ('014_caching', '76fcfbb7d555f7da7a3c2a6154ce491eb443472178d8762e364ebdbec6df8493'),
      ('015_order_lines', 'ed848df15324bceddf10073e90f73d8a4abf42541d827ebec90e0b9caa6aba5a'),
      ('016_order_limits', '6b121c4ed49cae2f5d36069bc937a48c78eed410810d72aa4784a1dc657ba2a9'),
      ('017_order_created_event', 'cc2a617f208a7822067696ef957d76e9bc935c361e33aea5f3c7b36c2db4eb9f'),
      ('018_begin_payment', 'd833974f94bd3eaaaee361b3816f5b06019d94e163e31c1c4b7995683f5b9815'),
      ('019_settle_payment', '29ff38ce695478dd0665625f994d097a245f1988e5ba6af414b99ebbd1afc5c8')
  ) AS v (version, checksum)
 WHERE m.version = v.version;
