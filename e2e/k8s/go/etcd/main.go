// Command etcd is the etcd server of go.etcd.io/etcd/server/v3 (see go.mod for the
// version), built by e2e/k8s/build.sh for the local Kubernetes control plane.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
