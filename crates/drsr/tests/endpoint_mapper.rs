//! Against a real Samba AD DC: its endpoint mapper tells where DRSUAPI listens, and a bind to
//! that port without authentication is answered (accepted or refused by the server, not by a
//! broken PDU).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use testkit::samba::SambaDc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_mapper_names_the_drsuapi_port() {
    let Some(dc) = testkit::available(SambaDc::start_default()) else { return };
    let host = std::net::IpAddr::V4(dc.ip());
    let endpoint = drsr::epm::map(host, drsr::DRSUAPI).await.expect("ept_map answers");
    assert_eq!(endpoint.ip(), host);
    assert!(endpoint.port() != 0 && endpoint.port() != 135, "a dynamic port: {endpoint}");
    // The port speaks DCE/RPC: a bind to DRSUAPI gets a bind_ack for the context.
    let connection = drsr::rpc::Connection::bind(endpoint, drsr::DRSUAPI).await.expect("bind");
    assert_eq!(connection.bound.result, 0, "{:?}", connection.bound);
    assert!(connection.bound.max_recv >= 1024, "{:?}", connection.bound);
    // An interface the server does not have is refused, as an error saying so.
    let unknown = (drsr::ndr::Uuid::parse("01234567-89ab-cdef-0123-456789abcdef"), 1, 0);
    let err = drsr::epm::map(host, unknown).await.expect_err("no such interface");
    assert!(matches!(err, drsr::RpcError::Refused(_) | drsr::RpcError::Fault(_)), "{err}");
}
