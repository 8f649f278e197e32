package greeting;

import org.springframework.web.bind.annotation.RequestMapping;
import org.springframework.web.bind.annotation.RequestMethod;
import org.springframework.web.bind.annotation.RequestParam;
import org.springframework.web.bind.annotation.RestController;

/** The gs-spring-boot sample's controller, served through Spring MVC's DispatcherServlet. */
@RestController
public class HelloController {

    @RequestMapping(value = "/", method = {RequestMethod.GET, RequestMethod.HEAD}, produces = "text/plain;charset=UTF-8")
    public String index() {
        return "Greetings from Spring Boot!";
    }

    @RequestMapping(value = "/greeting", method = {RequestMethod.GET, RequestMethod.HEAD}, produces = "text/plain;charset=UTF-8")
    public String greeting(@RequestParam(value = "name", defaultValue = "World") String name) {
        return "Hello, " + name + "!";
    }

    @RequestMapping(value = "/healthz", method = {RequestMethod.GET, RequestMethod.HEAD}, produces = "text/plain;charset=UTF-8")
    public String healthz() {
        return "ok";
    }
}
