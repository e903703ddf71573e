-- A node taken for dead (silent for longer than the node timeout, as in a
-- partition) loses its streams' rows: their slots go to others. When it
-- comes back it re-admits each of its streams under the limits and ends
-- the ones refused (`PgCluster::reregister`), and the ones an admin asked
-- to close meanwhile: such a request is kept here, beside the stream's row
-- (whose `close_requested` flag it replaces), so the row's removal with its
-- node does not lose it.
CREATE TABLE close_requests (
    connection_id TEXT COLLATE "C" PRIMARY KEY,
    requested_ms BIGINT NOT NULL
);
CREATE INDEX close_requests_requested_ms ON close_requests (requested_ms);

INSERT INTO close_requests (connection_id, requested_ms)
SELECT id, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT
  FROM connections WHERE close_requested;
