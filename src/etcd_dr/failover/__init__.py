"""Moving the service between sites: roles and epochs, write fencing, switchover, failover, failback,
and switching the clients' DNS name."""
