// Command etcd is etcd's own server main, built at the version whose client modules
// k8s.io/kubernetes v1.37.2 requires, for the test control plane (see ../build.sh).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
