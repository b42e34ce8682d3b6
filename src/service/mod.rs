//! The gRPC services one node serves on its one port.

mod evaluator;
mod events;
mod flagd_evaluation;
mod flagd_sync;
mod request;

pub use evaluator::Evaluator;
pub use events::changed_flags;
pub use flagd_evaluation::{FlagdV1, FlagdV2};
pub use flagd_sync::FlagdSync;
pub use request::{Gate, SELECTOR_HEADER};
