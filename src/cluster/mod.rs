//! Several instances sharing the input partitions (issue 16, in progress): membership and
//! partition ownership by leases in MongoDB ([`leases`]), and the pure policy of which
//! partitions each instance holds ([`assignment`]). Not yet wired into `run`: a single
//! instance still reads every partition (see docs/DESIGN.md, "Scale-out").

pub mod assignment;
pub mod leases;
