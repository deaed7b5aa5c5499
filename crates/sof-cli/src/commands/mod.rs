pub mod datasets;
pub mod demo;
pub mod inspect;
pub mod spatial;
pub mod synth;
pub mod tokenize;
