// Command hello prints "hello"; proc's tests build it with Build.
package main

import "fmt"

func main() { fmt.Println("hello") }
