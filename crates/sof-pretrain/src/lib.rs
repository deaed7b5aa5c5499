//! Pretraining (issue 5, in progress): the data side and the objectives that do not need the
//! model. Today: [`masking`], the reference's masked-token corruption.

pub mod masking;
