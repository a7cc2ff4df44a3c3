//! Multitune on several machines: a comparison's parts run as jobs of a queue in
//! PostgreSQL ([`queue`]) on any number of workers ([`worker`]), which share data,
//! checkpoints and results through an object store ([`artifacts`]); the server enqueues,
//! follows and assembles (`multitune-server`'s `distributed` module). [`experiment`] turns
//! an experiment as the API describes it into what the engine runs, for the server's
//! local worker and the distributed ones alike.

pub mod artifacts;
pub mod experiment;
pub mod queue;
pub mod worker;

pub use artifacts::Artifacts;
pub use queue::{Queue, Timing};
