package api

import "time"

// FirewallRule is a public-access rule as the API shows it.
type FirewallRule struct {
	Name           string     `json:"name"`
	StartIPAddress string     `json:"start_ip_address"`
	EndIPAddress   string     `json:"end_ip_address"`
	ExpiresAt      *time.Time `json:"expires_at,omitempty"`
	CreatedAt      time.Time  `json:"created_at"`
	Hits           uint64     `json:"hits"`
	LastUsed       *time.Time `json:"last_used,omitempty"`
}

// NetworkRule is a private-access network security rule.
type NetworkRule struct {
	Name                     string     `json:"name"`
	Priority                 int        `json:"priority"`
	Access                   string     `json:"access"`
	Direction                string     `json:"direction"`
	SourceAddressPrefix      string     `json:"source_address_prefix"`
	DestinationAddressPrefix string     `json:"destination_address_prefix,omitempty"`
	DestinationPortRange     string     `json:"destination_port_range"`
	ExpiresAt                *time.Time `json:"expires_at,omitempty"`
	CreatedAt                time.Time  `json:"created_at"`
	Hits                     uint64     `json:"hits"`
	LastUsed                 *time.Time `json:"last_used,omitempty"`
}

// RuleRequest creates or changes a rule; empty fields keep their value on
// update. ExpiresIn is a Go duration ("2h"), relative to the server's clock.
type RuleRequest struct {
	Name                     string     `json:"name"`
	StartIPAddress           string     `json:"start_ip_address,omitempty"`
	EndIPAddress             string     `json:"end_ip_address,omitempty"`
	Priority                 int        `json:"priority,omitempty"`
	Access                   string     `json:"access,omitempty"`
	Direction                string     `json:"direction,omitempty"`
	SourceAddressPrefix      string     `json:"source_address_prefix,omitempty"`
	DestinationAddressPrefix string     `json:"destination_address_prefix,omitempty"`
	DestinationPortRange     string     `json:"destination_port_range,omitempty"`
	ExpiresIn                string     `json:"expires_in,omitempty"`
	ExpiresAt                *time.Time `json:"expires_at,omitempty"`
}
