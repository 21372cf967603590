#!/bin/sh
# Run once by the postgres image on its first start (docker-entrypoint-initdb.d): the
# role the API connects as. It owns the database (and so, on PostgreSQL 15+, its
# public schema: migrations create the tables, the statistics job ANALYZEs them), but
# it is no superuser: a hole in the API cannot read other databases, run programs
# (COPY ... PROGRAM) or change the server's configuration.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v app_user="$APP_DB_USER" -v app_password="$APP_DB_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"app_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'app_password';
ALTER DATABASE :"db" OWNER TO :"app_user";
SQL
