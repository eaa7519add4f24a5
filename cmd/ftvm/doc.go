// Command ftvm is the one ftvm binary: each subcommand lives in its own file
// and registers itself in init (see commands.go), so adding one never
// touches the others.
//
//	ftvm <command> [arguments]
//	ftvm <command> --help
//
// Exit codes: 0 success, 1 failure (the command ran and something failed),
// 2 usage error (unknown command, bad flag or argument).
package main
