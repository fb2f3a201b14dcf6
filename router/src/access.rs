//! Which API key scope each RPC of the public service needs: the router's
//! policy for `vitrine_security::AuthLayer`.
//!
//! Reads need `read`; everything else needs `write` (which implies read),
//! including any method added to the proto later until it is listed here:
//! a new RPC is refused to read keys rather than opened by omission. Health
//! checks (load balancers, kubelet) and reflection (grpcurl) need no key.

use vitrine_proto::pb;
use vitrine_security::{Access, Scope};

/// The RPCs a `read` key may call.
pub const READ_METHODS: &[&str] = &["Search", "SimilarItems", "Recommend", "GetItems", "ClusterInfo", "ListSnapshots"];

/// Services served without a key.
const OPEN_SERVICES: &[&str] = &["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"];

/// What a call to `path` (`/package.Service/Method`) requires.
pub fn required(path: &str) -> Access {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    if OPEN_SERVICES.contains(&service) {
        Access::Open
    } else if service == pb::vitrine_server::SERVICE_NAME && READ_METHODS.contains(&method) {
        Access::Needs(Scope::Read)
    } else {
        Access::Needs(Scope::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: &str) -> Access {
        required(&format!("/{}/{method}", pb::vitrine_server::SERVICE_NAME))
    }

    #[test]
    fn read_methods_exist() {
        for m in READ_METHODS {
            assert!(pb::methods::VITRINE.contains(m), "{m} is not a method of the Vitrine service");
        }
    }

    #[test]
    fn every_method_needs_a_key() {
        let writes: Vec<&str> =
            pb::methods::VITRINE.iter().copied().filter(|m| of(m) == Access::Needs(Scope::Write)).collect();
        assert_eq!(
            writes,
            [
                "UpsertItems",
                "UpsertItemsStream",
                "DeleteItems",
                "RecordEvents",
                "UpdateSignals",
                "CreateSnapshot",
                "SwitchModels"
            ]
        );
        for m in READ_METHODS {
            assert_eq!(of(m), Access::Needs(Scope::Read), "{m}");
        }
    }

    #[test]
    fn health_and_reflection_are_open_and_the_rest_is_write() {
        assert_eq!(required("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(required("/grpc.health.v1.Health/Watch"), Access::Open);
        assert_eq!(required("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Access::Open);
        assert_eq!(of("MadeUp"), Access::Needs(Scope::Write));
        assert_eq!(required("/vitrine.v1.Shard/Search"), Access::Needs(Scope::Write));
        assert_eq!(required("/grpc.health.v1.HealthX/Check"), Access::Needs(Scope::Write));
        assert_eq!(required("garbage"), Access::Needs(Scope::Write));
    }
}
