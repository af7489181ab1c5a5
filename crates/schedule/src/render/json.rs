//! Schedules as JSON: the serde form of [`Schedule`], for files and other tools.
//!
//! The format is exactly the serde derive of the public types, so it round-trips losslessly
//! (slots included) and needs no hand-written schema. A schedule read back should be passed to
//! [`crate::validate()`] before use, like any schedule from outside the generators.

use crate::schedule::Schedule;

/// `schedule` as pretty-printed JSON.
pub fn json(schedule: &Schedule) -> String {
    serde_json::to_string_pretty(schedule).expect("a schedule always serialises")
}

/// Reads a schedule written by [`json`].
///
/// # Errors
/// When `text` is not the JSON form of a schedule.
pub fn from_json(text: &str) -> Result<Schedule, serde_json::Error> {
    serde_json::from_str(text)
}
