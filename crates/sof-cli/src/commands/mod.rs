pub mod datasets;
pub mod demo;
pub mod inspect;
pub mod spatial;
pub mod tokenize;
pub mod synth;
