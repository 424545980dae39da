//! # peregrine-ops
//!
//! From a validated model to encrypted execution on any [`Backend`](peregrine_backend::Backend):
//! - [`compile`]: turns the graph into a [`Program`] of packed steps. Chains of linear layers
//!   (convolution + batch norm, residual additions with their branches, pooling + fully
//!   connected…) are composed into one sparse map each and scheduled as diagonals
//!   (baby-step giant-step) between GIP layouts; polynomial activations become per-slot
//!   coefficient vectors; per-channel input scales are folded into the preceding linear layer.
//! - [`plan`]: assigns a level to every tensor from the backend's capabilities, inserts
//!   bootstraps when the backend can (and fails with the number of levels needed when it
//!   cannot), lists the rotation keys, and reports the cost.
//! - [`exec`]: runs a plan with a backend, with per-step timing and an optional trace.
//!
//! Plan a small polynomial CNN for a backend with 2,048 slots and 6 levels (what a backend's
//! [`Capabilities`](peregrine_backend::Capabilities) say); `peregrine_runtime` runs plans on
//! any backend:
//!
//! ```
//! use peregrine_backend::Capabilities;
//! use peregrine_ops::{compile, plan};
//!
//! let model = peregrine_model::testkit::tiny_poly_cnn(1);
//! let caps = Capabilities {
//!     backend: "example".into(),
//!     ring_dimension: 4096,
//!     slots: 2048,
//!     max_level: 6,
//!     log_scale: 40.0,
//!     log_moduli: vec![60.0, 40.0, 40.0, 40.0, 40.0, 40.0, 40.0],
//!     can_bootstrap: false,
//!     bootstrap_level: None,
//!     bootstrap_range: None,
//!     precision_bits: 30.0,
//!     security_bits: None,
//!     log_qp: None,
//!     costs: None,
//! };
//! let plan = plan(compile(&model, caps.slots)?, &caps)?;
//! assert!(plan.cost.levels_consumed <= caps.max_level && plan.cost.bootstraps == 0);
//! println!("{} levels, {} rotation keys: {:?}", plan.cost.levels_consumed, plan.rotation_keys.len(), plan.key_request());
//! # Ok::<(), peregrine_ops::OpsError>(())
//! ```

#![warn(missing_docs)]

pub mod compile;
pub mod exec;
pub mod plan;

pub use compile::{compile, compile_with, Program, Step, StepKind, TensorId, TensorInfo};
pub use exec::{decrypt_output, encrypt_input, execute, StepTiming};
pub use plan::{plan, propose_chain, required_levels, with_key_budget, Cost, Plan};

/// Errors of compilation, planning and execution.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The model uses something that cannot run packed under CKKS.
    #[error("unsupported for encrypted execution: {0}")]
    Unsupported(String),
    /// Not enough levels and no bootstrapping.
    #[error("the model needs {needed} levels (first short at step '{step}'), the backend offers {available} and cannot bootstrap; use a backend with more levels or with bootstrapping, or a shallower model")]
    LevelsExhausted {
        /// Levels the model needs without bootstrapping.
        needed: usize,
        /// Levels the backend offers.
        available: usize,
        /// The first step that runs out.
        step: String,
    },
    /// A layout or schedule could not be built for a step.
    #[error("layout error in '{step}'")]
    Layout {
        /// The step (or node) being scheduled.
        step: String,
        /// Why.
        #[source]
        source: peregrine_gip::LayoutError,
    },
    /// A program planned for a backend with another slot count.
    #[error("program compiled for {program} slots, backend has {backend}")]
    SlotMismatch {
        /// Slots the program was compiled for.
        program: usize,
        /// Slots of the backend.
        backend: usize,
    },
    /// A rotation-key budget too small to compose every rotation the plan needs.
    #[error("a budget of {budget} rotation keys cannot compose every rotation of {slots} slots the plan needs (at least {needed} keys)")]
    KeyBudget {
        /// Keys allowed.
        budget: usize,
        /// Keys that suffice in any case (the ±2^i set), or at least 1.
        needed: usize,
        /// Slots.
        slots: usize,
    },
    /// A value was consumed before it could be materialised (a compiler bug).
    #[error("internal: value of node '{0}' was absorbed by its only consumer and cannot be materialised")]
    Absorbed(String),
    /// A backend operation failed.
    #[error("backend error in step '{step}': {cause}")]
    Backend {
        /// The step.
        step: String,
        /// The backend's error (shown in the message, so not chained again).
        cause: peregrine_backend::BackendError,
    },
    /// A square left unrescaled met a consumer whose prime cannot absorb it (the planner then
    /// plans without tower reuse).
    #[error("tower reuse impossible at step '{step}': {detail}")]
    TowerMismatch {
        /// The consuming step.
        step: String,
        /// Why.
        detail: String,
    },
    /// Input or output did not match the plan.
    #[error("shape error: {0}")]
    Shape(String),
}
