package postgres

// ManagedConf is the text of the settings pgshield writes into
// pgshield.conf (managed and archiving settings): what a high-availability
// node hands to Patroni as its local postgresql.parameters
// (internal/cluster/patroni), since Patroni's own configuration file
// overrides PostgreSQL's include.
func (c *Cluster) ManagedConf() string { return c.managedSettings() + c.archiveSettings() }
