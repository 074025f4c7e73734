module example.com/voting/vote

go 1.26
