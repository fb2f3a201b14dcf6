//! A plaintext port that serves `grpc.health.v1` alone, for kubelet gRPC
//! probes, which cannot speak TLS: when the API port has TLS, probes go here
//! (`--health-listen`). It answers from the server's own health reporter,
//! so a draining shard reports NOT_SERVING here too. It serves nothing else,
//! so it gives nothing away that the API port protects.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// The running health port; dropping it closes the port.
pub struct HealthPort {
    local_addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl HealthPort {
    /// Binds `addr` now (so a taken port fails start-up) and serves health
    /// checks on it in a background task until the returned value is dropped.
    pub fn spawn(addr: SocketAddr, reporter: HealthReporter) -> anyhow::Result<Self> {
        let incoming = TcpIncoming::bind(addr).with_context(|| format!("binding the health port {addr}"))?;
        let local_addr = incoming.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let health = HealthServer::new(HealthService::from_health_reporter(reporter));
        tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, %local_addr, "health port stopped");
            }
        });
        tracing::info!(health = %local_addr, "plaintext health checks (grpc.health.v1 only)");
        Ok(Self { local_addr, _stop: stop })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}
