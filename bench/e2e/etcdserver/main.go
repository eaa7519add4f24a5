// Command etcdserver is the etcd server of go.etcd.io/etcd/server/v3 (its
// etcdmain, unchanged), built from this module so that the end-to-end bed
// runs the same etcd version as the client ftvm links, with nothing to
// install. bench/e2e.BuildEtcd builds it; flags are etcd's own (--help).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
