//! Pretraining (issue 5, in progress): the data side and the objectives that do not need the
//! model. Today: [`masking`] (the reference's masked-token corruption) and [`data`] (weighted,
//! seeded streaming of sequences from token corpora, checked against the model's vocabulary) and
//! [`objective`] (the MLM loss, vocabulary head only at masked positions).

pub mod data;
pub mod masking;
pub mod objective;
