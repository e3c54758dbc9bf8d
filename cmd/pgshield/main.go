// Command pgshield is the pgshield daemon and its command-line client.
package main

import (
	"os"

	"github.com/pgshield/pgshield/internal/cli"
)

func main() { os.Exit(cli.Execute(os.Args[1:])) }
