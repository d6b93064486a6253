//! The shared contract of livepush: the `livepush.v1` gRPC API generated from
//! `proto/`, the event-id rules every component enforces, the process signals
//! that start a graceful shutdown, and the Prometheus metrics of both
//! binaries.

pub mod allow_listed;
pub mod bearer;
#[cfg(any(test, feature = "test-support"))]
pub mod cli_checks;
pub mod codec;
pub mod event_id;
pub mod flags;
pub mod listen;
pub mod metrics;
pub mod recent;
pub mod signal;
pub mod sync;
pub mod target;
pub mod telemetry;
pub mod tls;
pub mod viewer_id;
pub mod watched_file;

pub use event_id::{EventId, InvalidEventId};
pub use viewer_id::{InvalidViewerId, ViewerId};

/// Code generated from `proto/livepush/v1/livepush.proto`.
pub mod proto {
    tonic::include_proto!("livepush.v1");

    /// The encoded `FileDescriptorSet` of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/livepush_descriptor.bin"));
}
