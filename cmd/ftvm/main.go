package main

import "os"

// commands holds every `ftvm <name>` subcommand; each file adds its own.
var commands = newRegistry("ftvm")

func main() {
	os.Exit(commands.dispatch(&env{stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:]))
}
