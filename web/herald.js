// herald browser client
