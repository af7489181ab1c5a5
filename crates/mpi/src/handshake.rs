//! The start-up check that every rank runs the same thing.
//!
//! Ranks are started separately (possibly on different machines, with different binaries or
//! flags), and a rank that trains another model, policy or W than its neighbours would not fail:
//! it would silently compute garbage, or hang on a message that never comes. So before anything
//! else every rank sends its [`Identity`] (program version, world size and the whole training
//! configuration) to all others, and every rank compares them all against rank 0's with
//! [`check_identities`]. All ranks see the same identities, so all reach the same verdict and
//! print the same error, naming the first rank that differs and each field that does.

use serde_json::{Value, json};
use timeprest_train::TrainConfig;

use crate::error::MpiError;
use crate::wire::WireError;

/// What a rank runs: the program version, the number of ranks it sees and its configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity(Value);

impl Identity {
    /// The identity of a rank of `world` ranks training `config`.
    pub fn new(config: &TrainConfig, world: usize) -> Self {
        Identity(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "world": world,
            "config": config,
        }))
    }

    /// The identity as bytes (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_string().into_bytes()
    }

    /// The identity of `bytes` sent by rank `rank`.
    pub fn from_bytes(rank: usize, bytes: &[u8]) -> Result<Self, MpiError> {
        serde_json::from_slice(bytes)
            .map(Identity)
            .map_err(|e| MpiError::Protocol {
                rank,
                cause: WireError::Invalid(format!("start-up identity: {e}")),
            })
    }

    /// The fields of `self` (rank `rank`) that differ from `reference` (rank 0), each as
    /// `name (this vs reference)`.
    fn differences(&self, reference: &Identity) -> Vec<String> {
        let mut found = Vec::new();
        let field = |identity: &Identity, key: &str| identity.0.get(key).cloned();
        for key in ["version", "world"] {
            let (mine, theirs) = (field(self, key), field(reference, key));
            if mine != theirs {
                found.push(describe(key, mine.as_ref(), theirs.as_ref()));
            }
        }
        let empty = serde_json::Map::new();
        let config = |identity: &Identity| match identity.0.get("config") {
            Some(Value::Object(map)) => map.clone(),
            _ => empty.clone(),
        };
        let (mine, theirs) = (config(self), config(reference));
        let mut keys: Vec<&String> = mine.keys().chain(theirs.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if mine.get(key) != theirs.get(key) {
                found.push(describe(key, mine.get(key), theirs.get(key)));
            }
        }
        found
    }
}

fn describe(key: &str, mine: Option<&Value>, theirs: Option<&Value>) -> String {
    let show = |value: Option<&Value>| value.map_or("nothing".to_string(), Value::to_string);
    format!("{key} ({} vs {})", show(mine), show(theirs))
}

/// Checks that all `identities` (by rank) equal rank 0's, and that the world has one rank per
/// stage of `config`.
pub fn check_identities(
    identities: &[Identity],
    config: &TrainConfig,
    world: usize,
) -> Result<(), MpiError> {
    if let Some(reference) = identities.first() {
        for (rank, identity) in identities.iter().enumerate().skip(1) {
            let differences = identity.differences(reference);
            if !differences.is_empty() {
                return Err(MpiError::ConfigMismatch { rank, differences });
            }
        }
    }
    if config.pipeline.num_stages as usize != world {
        return Err(MpiError::WorldSize {
            world,
            stages: config.pipeline.num_stages,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use timeprest_policy::PolicyKind;

    use super::*;

    fn round_trip(identity: &Identity) -> Identity {
        Identity::from_bytes(0, &identity.to_bytes()).unwrap()
    }

    #[test]
    fn equal_configurations_pass() {
        let config = TrainConfig::default();
        let identities = vec![round_trip(&Identity::new(&config, 3)); 3];
        check_identities(&identities, &config, 3).unwrap();
    }

    #[test]
    fn a_differing_rank_is_named_with_every_differing_field() {
        let config = TrainConfig::default();
        let other = {
            let mut config = config.clone();
            config.pipeline.num_stages = 4;
            config.pipeline.policy = PolicyKind::Gpipe;
            config
        };
        let identities = vec![
            Identity::new(&config, 3),
            Identity::new(&config, 3),
            round_trip(&Identity::new(&other, 3)),
        ];
        let error = check_identities(&identities, &config, 3).unwrap_err();
        let MpiError::ConfigMismatch { rank, differences } = &error else {
            panic!("expected a mismatch, got {error}");
        };
        assert_eq!(*rank, 2);
        assert_eq!(
            differences,
            &["policy (\"gpipe\" vs \"i-timeprest\")", "stages (4 vs 3)"]
        );
        assert!(
            error
                .to_string()
                .contains("rank 2 differs from rank 0 in policy")
        );
    }

    #[test]
    fn a_world_that_is_not_one_rank_per_stage_is_rejected() {
        let config = TrainConfig::default();
        let identities = vec![Identity::new(&config, 2); 2];
        let error = check_identities(&identities, &config, 2).unwrap_err();
        assert!(matches!(
            error,
            MpiError::WorldSize {
                world: 2,
                stages: 3
            }
        ));
        assert!(error.to_string().contains("mpirun -np 3"));
    }

    #[test]
    fn another_version_or_garbage_is_reported() {
        let config = TrainConfig::default();
        let mut old = Identity::new(&config, 3);
        old.0["version"] = json!("0.0.1");
        let error = check_identities(&[Identity::new(&config, 3), old], &config, 3).unwrap_err();
        assert!(
            error.to_string().contains("version (\"0.0.1\" vs"),
            "{error}"
        );
        assert!(matches!(
            Identity::from_bytes(4, b"{not json"),
            Err(MpiError::Protocol { rank: 4, .. })
        ));
    }
}
