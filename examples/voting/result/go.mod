module example.com/voting/result

go 1.26
