# hello-ruby: a JSON greeting over HTTP/1.1 (keep-alive) from Ruby's standard library alone.
require 'json'
require 'socket'

$stdout.sync = true
port = Integer(ENV.fetch('PORT', '8080'))
server = TCPServer.new('0.0.0.0', port)
served = 0
lock = Mutex.new
puts "hello-ruby listening on #{port}"

# One request from `client`: false when the connection is to be closed.
def answer(client, count)
  line = client.gets or return false
  _method, path, = line.split(' ', 3)
  length = 0
  keep = true
  while (header = client.gets) && header != "\r\n"
    name, value = header.split(':', 2)
    length = value.to_i if name.casecmp?('content-length')
    keep = false if name.casecmp?('connection') && value.strip.casecmp?('close')
  end
  client.read(length) if length.positive?
  body = JSON.generate(message: 'hello from ruby', ruby: RUBY_VERSION, path: path, requests: count.call) + "\n"
  client.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: #{body.bytesize}\r\n" \
               "#{keep ? '' : "Connection: close\r\n"}\r\n#{body}")
  keep
end

loop do
  Thread.new(server.accept) do |client|
    count = -> { lock.synchronize { served += 1 } }
    loop { break unless answer(client, count) }
  rescue StandardError => e
    puts "connection error: #{e.message}"
  ensure
    client.close
  end
end
