pub mod generate;
pub mod parity;
