"""Scale-out tests: several hosts (network and mount namespaces) sharing PostgreSQL, Redis and S3."""
