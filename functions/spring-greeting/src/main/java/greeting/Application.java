package greeting;

import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;
import org.eclipse.jetty.util.thread.QueuedThreadPool;
import org.springframework.web.context.support.AnnotationConfigWebApplicationContext;
import org.springframework.web.servlet.DispatcherServlet;
import org.springframework.web.servlet.mvc.method.annotation.RequestMappingHandlerAdapter;
import org.springframework.web.servlet.mvc.method.annotation.RequestMappingHandlerMapping;

/**
 * Spring MVC 4.3 on embedded Jetty 9.4, both from Debian's packages.
 *
 * <p>No {@code @Configuration} class (so no {@code @EnableWebMvc}): Spring 4.3's CGLIB proxying of
 * configuration classes fails on JDK 17. The beans are registered explicitly instead: the
 * {@code @RequestMapping} handler mapping and adapter (DispatcherServlet's 4.3 defaults are the
 * legacy ones, which ignore {@code @RestController}) and the controller itself.
 */
public final class Application {

    private Application() {}

    private static int intEnv(String name, int fallback) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? fallback : Integer.parseInt(v);
    }

    public static void main(String[] args) throws Exception {
        long started = System.nanoTime();
        int port = intEnv("PORT", 8080);

        AnnotationConfigWebApplicationContext context = new AnnotationConfigWebApplicationContext();
        context.register(RequestMappingHandlerMapping.class, RequestMappingHandlerAdapter.class, HelloController.class);
        DispatcherServlet dispatcher = new DispatcherServlet(context);

        QueuedThreadPool threads = new QueuedThreadPool(intEnv("MAX_THREADS", 64), intEnv("MIN_THREADS", 8), 60_000);
        threads.setName("http");
        Server server = new Server(threads);
        // One acceptor and one selector: the instance gets one or two CPUs.
        ServerConnector connector = new ServerConnector(server, 1, 1);
        connector.setHost(System.getenv().getOrDefault("HOST", "0.0.0.0"));
        connector.setPort(port);
        connector.setIdleTimeout(65_000);
        connector.setAcceptQueueSize(1024);
        server.addConnector(connector);

        ServletContextHandler handler = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
        handler.setContextPath("/");
        ServletHolder holder = new ServletHolder("dispatcher", dispatcher);
        holder.setInitOrder(1); // initialise Spring at start-up, not on the first request
        handler.addServlet(holder, "/");
        server.setHandler(handler);
        server.setStopAtShutdown(true);
        server.setStopTimeout(5_000);

        server.start();
        // restore.checkpointSignal: the bake sends SIGUSR1 after warm-up. Collecting the warm-up's
        // garbage then means a restored instance starts with an empty young generation instead of
        // running a young GC (12 ms, over lazily restored pages) within its first requests.
        sun.misc.Signal.handle(new sun.misc.Signal("USR1"), signal -> System.gc());
        System.out.printf("spring-greeting listening on %s:%d (Java %s, started in %d ms)%n",
                connector.getHost(), port, System.getProperty("java.version"), (System.nanoTime() - started) / 1_000_000);
        server.join();
    }
}
