//! martstream: GlobalMart's sales stream turned into an always-current analytics warehouse.
//!
//! # Layout
//!
//! - [`domain`]: the pure core. The event model, decoding and validation, dedup, and the
//!   incremental aggregates (RFM, product window, trends, star schema, sessions), with no
//!   async, no clocks and no I/O: given events and an `as_of`, they produce view documents
//!   and the changes since the last flush.
//!   `domain::batch` recomputes the same views from scratch (the tests' oracle).
//! - [`config`]: the one typed configuration (defaults → TOML → env → CLI), validated.
//! - [`kafka`]: adapters to the broker: the input [`kafka::source`] (manual assignment,
//!   own offsets), the dead-letter producer with its index of the letters already sent
//!   [`kafka::dlq`], and [`kafka::topics`] creation.
//! - [`sink`]: the MongoDB sink: view documents as BSON, idempotent batched upserts, the
//!   batch design's indexes.
//! - [`pipeline`]: the loop that wires source → engine → sink, with backpressure and the
//!   last flush on shutdown; `decode_stage` reads and decodes on a task of its own, in
//!   order, beside the single-writer engine; the worker's parts: apply in `pipeline`,
//!   `worker_flush` (what each lane is handed and when, acknowledgements, snapshot
//!   captures), `worker_dead_letters` (DLQ deliveries confirmed before a snapshot passes
//!   them); `pipeline::sink_lanes`: the two writers (views every 200 ms, bulk facts and
//!   dimensions as fast as MongoDB takes them, yielding to the views), each retrying with
//!   backoff.
//! - [`snapshot`]: the snapshot file format (versioned, checksummed) and the directory store;
//!   [`checkpoint`]: when the pipeline takes one, and the restore at start.
//! - [`reconcile`]: the nightly reconciliation against PostgreSQL (its queries and
//!   migrations, the schedule, the report in `reconciliation_reports`, repairs).
//! - [`query`]: interactive queries answered from the running state (the /v1 API).
//! - [`health`], [`http`], [`telemetry`]: readiness flags, the /metrics /healthz /readyz and
//!   /v1 endpoints, the Prometheus metrics (all defined in one place), end-to-end latency
//!   (hdrhistogram) and logging.
//! - [`cluster`]: several instances sharing the partitions (`cluster.enabled`): leases and
//!   heartbeats in MongoDB and the assignment policy, the exchange of per-partition
//!   partials (`cluster::exchange`), per-partition snapshots in MongoDB, the surrogate-key
//!   allocator, and `cluster::node`, one instance's loop over the partitions it holds.
//! - [`cli`]: the `martstream` command (`run`, `replay`, `reconcile`, `migrate`,
//!   `topics create`, `check-config`);
//!   `main.rs` only parses arguments and calls it.

pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod health;
pub mod http;
pub mod kafka;
pub mod pipeline;
pub mod query;
pub mod reconcile;
pub mod sink;
pub mod snapshot;
pub mod telemetry;
