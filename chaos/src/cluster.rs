//! The three-member etcd cluster a chaos run can point its electors at
//! (`--store etcd-cluster`): the testkit's fixture, whose leader member the
//! store faults kill or pause (the store's own failover under the electors).

pub use leader_testkit::servers::EtcdCluster;
