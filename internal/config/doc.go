// Package config holds pgshield's on-disk layout, its persisted configuration
// and the gateway parameters that pgshield owns (the Azure-named ones).
package config
