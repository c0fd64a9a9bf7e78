// Command hello prints "hello" (or what -ldflags "-X main.greeting=..." made of
// it); proc's tests build it with Build and Variant.
package main

import "fmt"

var greeting = "hello"

func main() { fmt.Println(greeting) }
