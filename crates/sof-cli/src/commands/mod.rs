pub mod datasets;
pub mod demo;
pub mod embed;
pub mod inspect;
pub mod pretrain;
pub mod spatial;
pub mod synth;
pub mod tokenize;
