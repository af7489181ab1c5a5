//! Renderers: the text grid, an SVG timeline, a Chrome trace and JSON.
//!
//! The grid is drawn from a [`crate::Schedule`]'s unit slots (it is the papers' figure format and
//! a command-line contract). The SVG and the Chrome trace are drawn from a [`crate::Timeline`],
//! so an idealised schedule ([`crate::Timeline::from_schedule`]) and a cost-model prediction
//! ([`crate::simulate_costs`]) render the same way. JSON is the serde form of a schedule.

mod chrome_trace;
mod grid;
mod json;
mod svg;

pub use chrome_trace::{chrome_trace, chrome_trace_annotated};
pub(crate) use grid::{Mark, grid_window};
pub use grid::{grid, grid_token, microbatch_letters};
pub use json::{from_json, json};
pub use svg::svg;
