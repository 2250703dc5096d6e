"""etcd-dr: disaster recovery for etcd across sites."""
