pub mod bench;
pub mod generate;
pub mod parity;
pub mod serve;
