//! martstream: GlobalMart's sales stream turned into an always-current analytics warehouse.
pub mod domain;
