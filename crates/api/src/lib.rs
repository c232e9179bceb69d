//! Generated gRPC types and stubs of the versioned berth API (`berth.v1`).

pub mod v1 {
    tonic::include_proto!("berth.v1");
}
