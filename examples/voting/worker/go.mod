module example.com/voting/worker

go 1.26
