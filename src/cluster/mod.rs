//! Several instances sharing the input partitions (issue 16; docs/DESIGN.md, "Scale-out"):
//! membership and partition ownership by leases in MongoDB ([`leases`]), the pure policy of
//! which partitions each instance holds ([`assignment`]), what partitions exchange for the
//! global views ([`exchange`]), per-partition snapshots every instance reaches
//! ([`part_snapshots`]), surrogate keys shared by every instance ([`keys`]), and the loop of
//! one instance ([`node`]).

pub mod assignment;
pub mod exchange;
pub mod keys;
pub mod leases;
pub mod node;
pub mod part_snapshots;
