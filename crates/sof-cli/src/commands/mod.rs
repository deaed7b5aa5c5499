pub mod datasets;
pub mod demo;
pub mod inspect;
pub mod synth;
